"""The recognizability index, the UI centre and RI's losses on hand-computed cases."""

import pytest
import torch
import torch.nn.functional as F

from portrait_engine.models.recognizability import ri
from portrait_engine.models.recognizability.heads import build_margin
from portrait_engine.models.recognizability.margin_ce import margin_cross_entropy


@pytest.mark.parametrize(
    "cos_target, cos_negative, cos_ui, expected",
    [
        (1.0, -1.0, -1.0, 1.0),  # own prototype, opposite the UI centre: best
        (1.0, -1.0, 1.0, 0.0),  # on the UI centre: unrecognisable whatever the class terms
        (-1.0, 1.0, -1.0, 0.0),  # on another class's prototype
        (0.5, 0.1, 0.0, 0.5 * 2.4 / 4),
        (0.2, 0.6, 0.5, 0.25 * 1.6 / 4),
    ],
)
def test_recognizability_index_hand_values(cos_target, cos_negative, cos_ui, expected):
    value = ri.recognizability_index(
        torch.tensor(cos_target), torch.tensor(cos_negative), torch.tensor(cos_ui)
    )
    assert value.item() == pytest.approx(expected)


def test_recognizability_index_is_monotone_in_each_criterion():
    base = dict(cos_target=torch.tensor(0.3), cos_negative=torch.tensor(0.1))
    low_ui = ri.recognizability_index(cos_ui=torch.tensor(-0.2), **base)
    high_ui = ri.recognizability_index(cos_ui=torch.tensor(0.6), **base)
    assert low_ui > high_ui
    closer = ri.recognizability_index(torch.tensor(0.6), torch.tensor(0.1), torch.tensor(0.0))
    farther = ri.recognizability_index(torch.tensor(0.3), torch.tensor(0.1), torch.tensor(0.0))
    assert closer > farther
    confused = ri.recognizability_index(torch.tensor(0.3), torch.tensor(0.5), torch.tensor(0.0))
    assert farther > confused


def test_cr_fiqa_score():
    value = ri.cr_fiqa_score(torch.tensor(0.6), torch.tensor(0.2), eps=0.0)
    assert value.item() == pytest.approx(0.6 / 1.2)


def test_ui_centre_first_batch_sets_then_ema():
    centre = torch.zeros(3)
    initialised = torch.tensor(False)
    first = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), dim=1)
    ri.update_ui_centre(centre, initialised, first, momentum=0.25)
    torch.testing.assert_close(centre, torch.tensor([1.0, 1.0, 0.0]) / 2**0.5)
    assert bool(initialised)
    second = torch.tensor([[0.0, 0.0, 1.0]])
    ri.update_ui_centre(centre, initialised, second, momentum=0.25)
    expected = F.normalize(0.75 * torch.tensor([1.0, 1.0, 0.0]) / 2**0.5 + 0.25 * second[0], dim=0)
    torch.testing.assert_close(centre, expected)
    before = centre.clone()
    ri.update_ui_centre(centre, initialised, second[:0], momentum=0.25)
    assert torch.equal(centre, before)


def test_ui_level_ema():
    level = torch.tensor(0.5)
    ri.update_ui_level(level, torch.tensor([0.1, 0.3]), momentum=0.5)
    assert level.item() == pytest.approx(0.5 * 0.5 + 0.5 * 0.2)
    ri.update_ui_level(level, torch.tensor([]), momentum=0.5)
    assert level.item() == pytest.approx(0.35)


def test_index_diversion_loss_hand_values_and_gradient():
    values = torch.tensor([0.1, 0.25, 0.5], requires_grad=True)
    loss = ri.index_diversion_loss(values, torch.tensor(0.2), tau=0.1)
    # hinge terms: 0.2 + 0.1 - 0.1 = 0.2, 0.3 - 0.25 = 0.05, 0 (already above)
    assert loss.item() == pytest.approx((0.2 + 0.05) / 3)
    loss.backward()
    torch.testing.assert_close(values.grad, torch.tensor([-1 / 3, -1 / 3, 0.0]))
    assert ri.index_diversion_loss(torch.zeros(0), torch.tensor(0.2), 0.1).item() == 0


def test_ri_regression_loss_is_smooth_l1_with_beta():
    predicted = torch.tensor([0.0, 1.0])
    target = torch.tensor([0.5, 3.0])
    # |d| = 0.5 < 0.75: 0.5 d^2 / beta; |d| = 2: |d| - beta / 2
    expected = (0.5 * 0.25 / 0.75 + (2 - 0.375)) / 2
    assert ri.ri_regression_loss(predicted, target).item() == pytest.approx(expected)


def test_prototype_cosines_match_the_margin_ce_by_products():
    torch.manual_seed(0)
    embeddings = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 6, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 0])
    margin, scale = build_margin("arcface")
    out = margin_cross_entropy(embeddings, weight, labels, margin, scale, chunk_size=3)
    unit = F.normalize(embeddings, dim=1)
    cos_target, cos_negative = ri.prototype_cosines(unit, weight, labels, out.negative_index)
    torch.testing.assert_close(cos_target.detach(), out.cos_target)
    torch.testing.assert_close(cos_negative.detach(), out.cos_negative)
    cos_target.sum().backward()
    assert embeddings.grad.abs().sum() > 0
    none = ri.prototype_cosines(unit, weight, labels, torch.full((5,), -1))[1]
    assert torch.all(none == -1)


def test_ui_cluster_loss_hand_values_and_gradient():
    centre = torch.tensor([1.0, 0.0])
    # unit embeddings at 0°, 90° and 180° from the centre: 1 − cos = 0, 1, 2 → mean 1
    ui = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], requires_grad=True)
    centre_leaf = centre.clone().requires_grad_()
    loss = ri.ui_cluster_loss(ui, centre_leaf)
    assert loss.item() == pytest.approx(1.0)
    loss.backward()
    # d/dû_u of mean(1 − ⟨û_u, c⟩) = −c / n; the centre is a constant (detached)
    torch.testing.assert_close(ui.grad, -centre.expand(3, 2) / 3)
    assert centre_leaf.grad is None


def test_ui_cluster_loss_empty_or_uninitialised_is_zero():
    empty = torch.zeros(0, 4, requires_grad=True)
    assert ri.ui_cluster_loss(empty, F.normalize(torch.ones(4), dim=0)).item() == 0.0
    some = torch.randn(3, 4, requires_grad=True)
    loss = ri.ui_cluster_loss(some, torch.zeros(4))
    assert loss.item() == 0.0
    loss.backward()  # still part of the graph
    torch.testing.assert_close(some.grad, torch.zeros(3, 4))


def test_ui_diverted_target_removes_the_component_towards_the_ui_centre():
    centre = torch.tensor([1.0, 0.0, 0.0])
    unit = torch.tensor(
        [
            [0.6, 0.8, 0.0],  # cosine 0.6 to the centre: the target is (0, 1, 0)
            [-0.6, 0.0, 0.8],  # on the far side: its own target
            [0.0, 0.0, 1.0],  # orthogonal: its own target (used with a zero centre below)
        ]
    )
    target = ri.ui_diverted_target(unit[:2], centre)
    torch.testing.assert_close(target, torch.tensor([[0.0, 1.0, 0.0], [-0.6, 0.0, 0.8]]))
    # an uninitialised centre changes nothing
    torch.testing.assert_close(ri.ui_diverted_target(unit, torch.zeros(3)), unit)


def test_attention_mse_loss_hand_values_and_gradient():
    centre = torch.tensor([1.0, 0.0, 0.0])
    unit = torch.tensor([[0.6, 0.8, 0.0], [-0.6, 0.0, 0.8]], requires_grad=True)
    loss = ri.attention_mse_loss(unit, centre)
    # sample 0: |(0.6, 0.8, 0) - (0, 1, 0)|^2 = 0.36 + 0.04 = 0.4 = 2 - 2 sqrt(1 - 0.6^2);
    # sample 1: 0 (already away from the centre); mean 0.2
    assert loss.item() == pytest.approx(0.2)
    loss.backward()
    # d/dv of mean ||v - sg(t)||^2 = (v - t) for the two samples, halved by the mean
    torch.testing.assert_close(unit.grad, torch.tensor([[0.6, -0.2, 0.0], [0.0, 0.0, 0.0]]))
    empty = torch.zeros(0, 3, requires_grad=True)
    assert ri.attention_mse_loss(empty, centre).item() == 0.0


def test_attention_mse_loss_pushes_an_embedding_away_from_the_ui_centre():
    centre = F.normalize(torch.tensor([1.0, 1.0, 0.0]), dim=0)
    raw = torch.tensor([[1.0, 0.2, 0.3]], requires_grad=True)
    before = (F.normalize(raw, dim=1) @ centre).item()
    optimizer = torch.optim.SGD([raw], lr=0.1)
    for _ in range(20):
        optimizer.zero_grad()
        ri.attention_mse_loss(F.normalize(raw, dim=1), centre).backward()
        optimizer.step()
    after = (F.normalize(raw, dim=1) @ centre).item()
    assert before > 0.6 and 0 <= after < before - 0.3
