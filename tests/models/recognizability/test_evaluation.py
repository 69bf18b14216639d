"""Evaluation metrics against hand-computed values and scikit-learn."""

import math

import numpy as np
import pytest
import torch

from portrait_engine.models.recognizability import evaluation as ev


def test_mate_ranks_by_hand():
    # 2-D unit vectors at angles; cosine = cos(angle difference)
    def at(*degrees):
        r = np.radians(degrees)
        return np.stack([np.cos(r), np.sin(r)], 1)

    gallery = at(0, 90, 180, 10)  # labels 0, 1, 2 and a distractor close to identity 0
    gallery_labels = [0, 1, 2, -1]
    probes = at(20, 80, 200, 5)
    probe_labels = [0, 1, 2, 2]
    # probe 0 at 20°: distractor (10°, cos 10°) beats its mate (0°, cos 20°) -> rank 2
    # probe 1 at 80°: mate at 90° is closest -> rank 1
    # probe 2 at 200°: mate at 180° closest -> rank 1
    # probe 3 at 5° labelled 2: mate at 180° is the farthest of all 4 -> rank 4
    ranks = ev.mate_ranks(probes, probe_labels, gallery, gallery_labels)
    assert ranks.tolist() == [2, 1, 1, 4]
    result = ev.identification(probes, probe_labels, gallery, gallery_labels, ranks=(1, 2, 5))
    assert result == {"rank1": 0.5, "rank2": 0.75, "rank5": 1.0}
    assert ev.cumulative_match(ranks, 4).tolist() == [0.5, 0.75, 0.75, 1.0]


def test_identification_uses_the_best_of_several_mates_and_accepts_torch():
    gallery = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    probes = torch.tensor([[0.0, 2.0]])  # scale must not matter
    # mates of label 1: rows 1 (cos 1) and 2 (cos 0.8) -> best mate is row 1 -> rank 1
    assert ev.mate_ranks(probes, torch.tensor([1]), gallery, torch.tensor([0, 1, 1])).tolist() == [
        1
    ]


def test_identification_errors():
    g = np.eye(3)
    with pytest.raises(ValueError, match="no mate"):
        ev.identification(g[:1], [7], g, [0, 1, 2])
    with pytest.raises(ValueError, match="dimension"):
        ev.identification(np.ones((1, 2)), [0], g, [0, 1, 2])
    with pytest.raises(ValueError, match="probe_labels"):
        ev.identification(g[:2], [0], g, [0, 1, 2])
    with pytest.raises(TypeError, match="integer"):
        ev.identification(g[:1], [0.5], g, [0, 1, 2])
    with pytest.raises(ValueError, match="NaN"):
        ev.identification(np.full((1, 3), np.nan), [0], g, [0, 1, 2])
    with pytest.raises(ValueError, match="at least one"):
        ev.identification(np.zeros((0, 3)), np.zeros(0, dtype=int), g, [0, 1, 2])
    with pytest.raises(ValueError, match="ranks"):
        ev.identification(g[:1], [0], g, [0, 1, 2], ranks=(0,))


def test_roc_auc_by_hand_with_ties():
    scores = [0.9, 0.5, 0.5, 0.1]
    same = [True, True, False, False]
    # genuine vs impostor comparisons: (0.9>0.5) 1, (0.9>0.1) 1, (0.5=0.5) 1/2, (0.5>0.1) 1
    assert ev.roc_auc(scores, same) == pytest.approx(3.5 / 4)


def test_roc_auc_matches_scikit_learn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    same = rng.uniform(size=500) < 0.3
    scores = np.round(rng.normal(size=500) + same, 1)  # rounded: many ties
    assert ev.roc_auc(scores, same) == pytest.approx(sklearn_metrics.roc_auc_score(same, scores))


def test_tar_at_far_by_hand():
    impostor = np.arange(100) / 100.0  # 0.00 … 0.99
    genuine = np.array([0.985, 0.995, 0.5, 0.9])
    scores = np.r_[genuine, impostor]
    same = np.r_[np.ones(4, bool), np.zeros(100, bool)]
    result = ev.tar_at_far(scores, same, fars=(0.01, 0.1, 0.001))
    # FAR 1 %: one impostor may exceed t -> t = 0.98 -> genuine above: 0.985, 0.995
    assert result[0.01] == 0.5
    # FAR 10 %: t = 0.89 -> 0.985, 0.995, 0.9
    assert result[0.1] == 0.75
    # FAR 0.1 % with 100 impostors cannot be measured
    assert math.isnan(result[0.001])
    # the FAR actually achieved never exceeds the target
    for far in (0.01, 0.05, 0.1, 0.5):
        t = ev.threshold_at_far(impostor, far)
        assert (impostor > t).mean() <= far


def test_tar_at_far_against_scikit_learn_roc():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    same = rng.uniform(size=4000) < 0.2
    scores = rng.normal(size=4000) + 2 * same
    fpr, tpr, _ = sklearn_metrics.roc_curve(same, scores)
    for far, tar in ev.tar_at_far(scores, same, fars=(1e-2, 1e-3)).items():
        # the best TPR on sklearn's ROC at FPR <= far (continuous scores: no ties)
        assert tar == pytest.approx(tpr[fpr <= far].max())
    far, tar = ev.roc_curve(scores, same)
    assert np.trapezoid(tar, far) == pytest.approx(sklearn_metrics.roc_auc_score(same, scores))


def test_verification_and_pair_scores():
    x = np.array([[1.0, 0], [0.9, 0.1], [0, 1.0], [0.1, 0.9]])
    scores, same, first, second = ev.pair_scores(x, [0, 0, 1, 1])
    assert len(scores) == 6 and same.sum() == 2
    assert (first < second).all()
    n = ev.normalize(x)
    assert scores == pytest.approx([n[i] @ n[j] for i, j in zip(first, second, strict=True)])
    result = ev.verification(scores, same, fars=(0.25,))
    assert result["auc"] == 1.0 and result["tar@far=0.25"] == 1.0
    sub = ev.pair_scores(x, [0, 0, 1, 1], max_pairs=3)
    assert len(sub[0]) == 3
    with pytest.raises(ValueError, match="genuine and impostor"):
        ev.verification([0.1, 0.2], [True, True])
    with pytest.raises(ValueError, match="two embeddings"):
        ev.pair_scores(x[:1], [0])


def test_error_versus_reject_by_hand():
    # 4 impostors fix the threshold at FMR 25 %: t = 0.3 (one impostor, 0.4, above)
    impostor_scores = [0.1, 0.2, 0.3, 0.4]
    genuine_scores = [0.2, 0.25, 0.8, 0.9]  # the two below t are the low-quality ones
    scores = np.r_[genuine_scores, impostor_scores]
    same = np.r_[np.ones(4, bool), np.zeros(4, bool)]
    quality = np.r_[[0.1, 0.2, 0.8, 0.9], [0.5, 0.6, 0.7, 0.95]]
    curve = ev.error_versus_reject(scores, same, quality, fmr=0.25, fractions=[0, 0.125, 0.25, 0.5])
    assert curve.threshold == 0.3
    # reject 0: FNMR 2/4; reject 1 pair (q 0.1): 1/3; reject 2 (q 0.1, 0.2): 0/2; reject 4: 0/2
    assert curve.fnmr.tolist() == pytest.approx([0.5, 1 / 3, 0.0, 0.0])
    expected_area = 0.125 * (0.5 + 1 / 3) / 2 + 0.125 * (1 / 3) / 2
    assert curve.area == pytest.approx(expected_area)
    # an uninformative (reversed) quality rejects the good pairs first: the FNMR rises
    worst = ev.error_versus_reject(scores, same, -quality, fmr=0.25, fractions=[0, 0.25])
    assert worst.fnmr[1] > worst.fnmr[0]


def test_error_versus_reject_threshold_from_a_subset_of_impostors():
    # impostors 0.1, 0.2, 0.3, 0.4 and a matching pair of unrecognisable faces at 0.99: on all
    # five, FMR 20 % puts the threshold at 0.4; without the 0.99 pair FMR 25 % gives 0.3
    scores = np.array([0.35, 0.9, 0.1, 0.2, 0.3, 0.4, 0.99])
    same = np.array([True, True, False, False, False, False, False])
    quality = np.arange(7, dtype=np.float64)
    everything = ev.error_versus_reject(scores, same, quality, fmr=0.2, fractions=[0])
    assert everything.threshold == 0.4 and everything.fnmr[0] == 0.5
    mask = np.array([True] * 6 + [False])
    subset = ev.error_versus_reject(scores, same, quality, 0.25, [0], threshold_pairs=mask)
    assert subset.threshold == 0.3 and subset.fnmr[0] == 0.0
    with pytest.raises(ValueError, match="threshold_pairs"):
        ev.error_versus_reject(scores, same, quality, 0.25, [0], threshold_pairs=mask[:3])


def test_erc_pair_masks_leave_out_pairs_of_two_unrecognisable_faces():
    from portrait_engine.models.recognizability.eval_command import erc_pair_masks

    # samples: 0 clean (id 0), 1 low-res (id 0), 2 clean (id 1), 3 UI (id 0), 4 UI (id 1),
    # 5 UI (id 1); conditions index CONDITIONS = (clean, very_low_resolution, unrecognizable)
    condition = np.array([0, 1, 0, 2, 2, 2])
    labels = np.array([0, 0, 1, 0, 1, 1])
    first, second = np.triu_indices(6, k=1)
    same = labels[first] == labels[second]
    # UI faces at one point match each other whatever the identity: scores 0.95 among them
    scores = np.full(len(first), 0.1)
    ui = condition == 2
    both = ui[first] & ui[second]
    scores[both] = 0.95
    scores[(first == 0) & (second == 1)] = 0.8  # the recognisable genuine pair
    masks = erc_pair_masks(condition, first, second, same)
    # pairs (3,4), (3,5), (4,5) are the three UI-UI pairs: left out; the other 12 kept
    assert masks.keep.tolist() == (~both).tolist() and int(masks.keep.sum()) == 12
    # threshold from pairs without a UI face: (0,1), (0,2), (1,2); two of them impostors
    expected = [(0, 1), (0, 2), (1, 2)]
    chosen = [(int(a), int(b)) for a, b in zip(first, second, strict=True)]
    assert [pair for pair, t in zip(chosen, masks.threshold_pairs, strict=True) if t] == expected
    # among UI-UI pairs, (4,5) is genuine at 0.95 and (3,4), (3,5) impostors at 0.95: a tie
    assert masks.unrecognizable_pairs_auc(scores) == 0.5
    # with the mask, RI-like quality that ranks UI lowest makes the ERC fall: at reject 0 the
    # genuine pairs kept are (0,1) 0.8 and (0,3), (1,3), (2,4), (2,5) at 0.1: FNMR 4/5
    quality = np.where(ui, 0.0, 1.0)
    curve = ev.error_versus_reject(
        scores[masks.keep],
        same[masks.keep],
        ev.pair_quality(quality, first, second)[masks.keep],
        fmr=0.5,
        fractions=[0, 0.75],
        threshold_pairs=masks.threshold_pairs[masks.keep],
    )
    assert curve.threshold == 0.1
    assert curve.fnmr.tolist() == pytest.approx([4 / 5, 0.0])


def test_erc_pair_masks_fall_back_on_all_pairs_when_too_few_impostors():
    from portrait_engine.models.recognizability.eval_command import erc_pair_masks

    condition = np.array([0, 0, 2])
    first, second = np.triu_indices(3, k=1)
    same = np.array([True, False, False])
    masks = erc_pair_masks(condition, first, second, same)
    assert masks.keep.all() and masks.threshold_pairs.all()
    assert masks.threshold_from.startswith("all impostor pairs")
    assert masks.unrecognizable_pairs_auc(np.zeros(3)) is None


def test_error_versus_reject_errors():
    s, same = np.array([0.1, 0.9]), np.array([False, True])
    with pytest.raises(ValueError, match="impostor pairs"):
        ev.error_versus_reject(s, same, [1.0, 1.0], fmr=1e-3)
    with pytest.raises(ValueError, match="one value per pair"):
        ev.error_versus_reject(s, same, [1.0], fmr=0.5)
    with pytest.raises(ValueError, match="fractions"):
        ev.error_versus_reject(s, same, [1.0, 1.0], fmr=0.5, fractions=[1.0])


def test_pair_quality_is_the_minimum():
    q = np.array([0.3, 0.9, 0.5])
    assert ev.pair_quality(q, [0, 1], [1, 2]).tolist() == [0.3, 0.5]


def test_embedding_norm_quality():
    assert ev.embedding_norm_quality(torch.tensor([[3.0, 4.0], [0.0, 1.0]])).tolist() == [5.0, 1.0]


def test_crfiqa_quality_by_hand():
    x = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    labels = [0, 0, 1, 1]
    q = ev.crfiqa_quality(x, labels, eps=0.0)
    # sample 0: own centre (leave-one-out) = sample 1 = (1, 0): CCS 1;
    #   other centre = normalize((0,1) + (0.6,0.8)) = (0.6, 1.8)/|.| -> cos = 0.6 / sqrt(3.6)
    other = 0.6 / math.sqrt(0.36 + 3.24)
    assert q[0] == pytest.approx(1 / (other + 1))
    # sample 3: own centre = (0, 1): CCS 0.8; other centre (1, 0): NNCCS 0.6
    assert q[3] == pytest.approx(0.8 / 1.6)
    with pytest.raises(ValueError, match="two classes"):
        ev.crfiqa_quality(x, [0, 0, 0, 0])
