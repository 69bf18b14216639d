"""Result files: schema round trip, compare, Markdown, BENCHMARKS.md, plots, the command."""

from __future__ import annotations

import copy
import json

import pytest

from portrait_engine import cli
from portrait_engine.benchmark import compare, plots, report, runner, schema
from tests.benchmark.conftest import scale_add_case, tiny_config


@pytest.fixture
def saved_result(use_cases, tmp_path):
    use_cases({"scale_add": [scale_add_case("toy-a"), scale_add_case("toy-b", n=512)]})
    result = runner.run_benchmarks(tiny_config(tmp_path, command="portrait-engine bench toy"))
    return result, tmp_path / result["environment"]["device"]


def test_a_run_stopped_part_way_leaves_a_valid_partial_result(use_cases, tmp_path, monkeypatch):
    use_cases({"scale_add": [scale_add_case("toy-a"), scale_add_case("toy-b", n=512)]})
    calls = []

    def stop_after_first_case(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a time limit stops the run in its second case
        return real_run_case(*args, **kwargs)

    real_run_case = runner.run_case
    monkeypatch.setattr(runner, "run_case", stop_after_first_case)
    with pytest.raises(KeyboardInterrupt):
        runner.run_benchmarks(tiny_config(tmp_path))
    folder = next(tmp_path.iterdir())
    assert [p.name for p in folder.iterdir()] == ["quick.partial.json"]
    partial = schema.load(folder / "quick.partial.json")
    assert partial["partial"] is True
    assert {row["shape"] for row in partial["rows"]} == {"toy-a"}
    assert partial["ceilings"]["copy_bandwidth"]["value"] > 0
    # a whole run replaces it with the result
    monkeypatch.setattr(runner, "run_case", real_run_case)
    runner.run_benchmarks(tiny_config(tmp_path))
    assert sorted(p.name for p in folder.iterdir()) == ["quick.json", "quick.md"]


def test_schema_round_trip(saved_result):
    result, folder = saved_result
    loaded = schema.load(folder / "quick.json")
    assert loaded == json.loads(json.dumps(result, default=str))
    assert loaded["schema"] == schema.SCHEMA
    assert loaded["command"] == "portrait-engine bench toy"
    for row in loaded["rows"]:
        assert set(schema.ROW_FIELDS) <= set(row)
        assert set(schema.TIMED_FIELDS) <= set(row)


def test_schema_rejects_broken_results(saved_result):
    result, _ = saved_result
    for breakage, message in (
        (lambda r: r.pop("ceilings"), "lacks"),
        (lambda r: r["rows"][0].pop("median_ms"), "median_ms"),
        (lambda r: r["rows"][0].update(median_ms=0.0), "positive"),
        (lambda r: r.update(schema="portrait_engine.bench/99"), "schema"),
    ):
        broken = copy.deepcopy(result)
        breakage(broken)
        with pytest.raises(schema.SchemaError, match=message):
            schema.validate(broken)
    with pytest.raises(schema.SchemaError, match="unknown result schema"):
        schema.upgrade({"schema": "portrait_engine.bench/99"})


def test_version_1_results_are_upgraded_on_load(tmp_path):
    v1 = {
        "environment": {"device": "cpu-x", "copy_bandwidth_gbps": 40.0, "date": "d"},
        "config": {"quick": True},
        "rows": [
            {"op": "o", "shape": "s", "description": "", "params": {}, "provider": "torch",
             "dtype": "float32", "mode": "forward", "status": "ok", "median_ms": 2.0,
             "p20_ms": 1.0, "p80_ms": 3.0, "gbps": 1.0},
            {"op": "o", "shape": "s", "description": "", "params": {}, "provider": "triton",
             "dtype": "float32", "mode": "-", "status": "unavailable: no"},
        ],
    }  # fmt: skip
    path = tmp_path / "quick.json"
    path.write_text(json.dumps(v1))
    loaded = schema.load(path)
    assert loaded["ceilings"]["copy_bandwidth"]["value"] == 40.0
    assert loaded["rows"][0]["median_ms"] == 2.0 and loaded["rows"][0]["iqr_ms"] is None
    assert loaded["command"] is None


def test_markdown_of_a_result_has_every_row_and_the_ceilings(saved_result):
    result, folder = saved_result
    text = (folder / "quick.md").read_text()
    assert "Command: `portrait-engine bench toy`" in text
    assert "copy bandwidth" in text and "float32 matrix rate" in text
    assert "## scale_add" in text
    timed = [r for r in result["rows"] if r["status"] == "ok"]
    assert len([line for line in text.splitlines() if line.startswith("| toy-")]) == len(timed)


def test_compare_gives_the_ratio_of_medians(saved_result):
    result, _ = saved_result
    faster = copy.deepcopy(result)
    for row in faster["rows"]:
        row["median_ms"] /= 2
    faster["rows"] = [r for r in faster["rows"] if r["shape"] != "toy-b" or r["provider"] != "sdpa"]
    comparison = compare.compare(result, faster)
    matched = [r for r in comparison["rows"] if r["speedup"] is not None]
    assert matched and all(r["speedup"] == pytest.approx(2.0) for r in matched)
    missing = [r for r in comparison["rows"] if r["speedup"] is None]
    assert {(r["shape"], r["provider"]) for r in missing} == {("toy-b", "sdpa")}
    assert all(r["note"] == "B: absent" for r in missing)
    assert comparison["ceilings"]["copy_bandwidth_gbps"][0] > 0
    text = compare.compare_markdown(comparison)
    assert "| scale_add | toy-a | float32 | torch | forward |" in text and "| 2.00 |" in text


def test_compare_command_prints_the_ratio_table(saved_result, tmp_path, capsys):
    result, folder = saved_result
    slower = copy.deepcopy(result)
    for row in slower["rows"]:
        if row["status"] == "ok":
            row["median_ms"] *= 4
    (tmp_path / "slower.json").write_text(schema.dumps(slower))
    code = cli.main(
        ["bench", "--compare", str(folder / "quick.json"), str(tmp_path / "slower.json")]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "speed-up A/B" in out and "0.25x" in out


def test_benchmarks_markdown_is_generated_from_the_result_files(saved_result, tmp_path):
    result, folder = saved_result
    target = tmp_path / "BENCHMARKS.md"
    code = cli.main(["bench", "--report", "--out", str(tmp_path), "--benchmarks-md", str(target)])
    assert code == 0
    text = target.read_text()
    device = result["environment"]["device"]
    assert f"## {device} (quick sizes)" in text
    assert "Command: `portrait-engine bench toy`" in text
    assert f"[{device}/quick.md]({device}/quick.md)" in text
    # no kernel of ours ran here, so the summary names none
    assert "| scale_add | n=4096 | float32 | forward |" in text
    assert "## GPU" in text and "Not yet measured" in text


def test_plots_are_written_when_matplotlib_is_present(saved_result, tmp_path):
    pytest.importorskip("matplotlib")
    result, _ = saved_result
    paths = plots.write_plots(result, tmp_path, "quick")
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["quick-scale_add.png"]
    with open(paths[0], "rb") as png:
        assert png.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "![scale_add](quick-scale_add.png)" in report.result_markdown(result, plots=paths)


def test_plots_are_skipped_without_matplotlib(saved_result, tmp_path, monkeypatch):
    result, _ = saved_result
    monkeypatch.setattr(plots, "matplotlib_available", lambda: False)
    assert plots.write_plots(result, tmp_path, "quick") == []


def test_bench_command_runs_checks_prints_per_op_tables_and_saves(use_cases, tmp_path, capsys):
    use_cases({"scale_add": [scale_add_case()]})
    code = cli.main(
        ["bench", "--device", "cpu", "--providers", "torch", "sdpa", "--budget", "0.01",
         "--out", str(tmp_path), "--no-plots"]
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "scale_add" in out and "copy bandwidth" in out and "peak MiB" in out
    (saved,) = tmp_path.glob("*/quick.json")
    loaded = schema.load(saved)
    assert loaded["command"].startswith("portrait-engine bench --device cpu")
    assert loaded["config"]["providers"] == ["torch", "sdpa"]


def test_bench_command_fails_when_a_provider_is_wrong(use_cases, tmp_path):
    case = scale_add_case()
    case.functions["sdpa"] = lambda x, y: x + y
    use_cases({"scale_add": [case]})
    code = cli.main(
        ["bench", "--device", "cpu", "--providers", "torch", "sdpa", "--budget", "0.01",
         "--no-save"]
    )  # fmt: skip
    assert code == 1


def _assemble_tool():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "tools" / "assemble_partial_results.py"
    spec = importlib.util.spec_from_file_location("assemble_partial_results", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_partial_rows_of_two_runs_assemble_into_one_result(saved_result, tmp_path):
    result, _ = saved_result
    copy_bw = result["ceilings"]["copy_bandwidth"]["value"]
    # two old-style partials (config + rows only): the "sdpa" rows in one, "torch" in the other
    rows = copy.deepcopy(result["rows"])
    for row in rows:
        row.pop("speedup_vs_torch", None)
    ours = {"config": result["config"], "rows": [r for r in rows if r["provider"] == "sdpa"]}
    eager = {"config": result["config"], "rows": [r for r in rows if r["provider"] == "torch"]}
    tool = _assemble_tool()
    env = {**result["environment"], "copy_bandwidth_gbps": None}
    assembled = tool.assemble([ours, eager], env)
    schema.validate(assembled)
    assert len(assembled["rows"]) == len(rows)
    recovered = assembled["ceilings"]["copy_bandwidth"]["value"]
    assert recovered == pytest.approx(copy_bw, rel=1e-9)
    for row in assembled["rows"]:
        if row["status"] == "ok" and row["provider"] == "sdpa":
            want = next(
                r["median_ms"]
                for r in rows
                if r["provider"] == "torch"
                and (r["shape"], r["mode"]) == (row["shape"], row["mode"])
            )
            assert row["speedup_vs_torch"] == pytest.approx(want / row["median_ms"])
    (tmp_path / "env.json").write_text(json.dumps(env))
    for name, part in (("a.json", ours), ("b.json", eager)):
        (tmp_path / name).write_text(json.dumps(part))
    out = tmp_path / "out"
    args = [
        str(out),
        str(tmp_path / "env.json"),
        str(tmp_path / "a.json"),
        str(tmp_path / "b.json"),
    ]
    assert tool.main(args) == 0
    assert schema.load(out / "quick.json")["rows"] == assembled["rows"]


def test_a_cpu_result_from_a_build_without_isa_clones_says_so(saved_result):
    """A CPU run of an extension built with PORTRAIT_ENGINE_ISA_CLONES=0 (baseline kernels, as
    on a GPU lease) records its build flags, and the report line warns about its CPU rows."""
    result, _ = saved_result
    assert "extension" in result["environment"]
    clone_less = copy.deepcopy(result)
    clone_less["environment"]["device_type"] = "cpu"
    clone_less["environment"]["extension"] = {"cuda": "0", "isa_clones": "0"}
    assert "without their AVX2 / AVX-512 clones" in report.environment_line(clone_less)
    clone_less["environment"]["extension"]["isa_clones"] = "1"
    assert "clones" not in report.environment_line(clone_less)


def test_a_cpu_result_names_its_last_level_cache(saved_result):
    """The 2-core CPU machines differ in model from one lease to the next; the report line
    gives the cache size the run measured, so their results can be told apart."""
    result, _ = saved_result
    cpu = copy.deepcopy(result)
    cpu["environment"].update(device_type="cpu", cache_bytes=300 * 2**20)
    assert "last-level cache 300 MiB" in report.environment_line(cpu)
    cpu["environment"]["device_type"] = "cuda"
    assert "last-level cache" not in report.environment_line(cpu)


def test_a_row_wrong_against_a_since_raised_tolerance_is_annotated():
    """sample_importance's paper-size case takes 1e-2 today (depths that swap at the merge);
    an older result judged at the float32 default 1e-4 says so in BENCHMARKS.md, unchanged."""
    row = {
        "op": "sample_importance",
        "shape": "eg3d",
        "provider": "native",
        "status": "wrong: output rel-L2 1.69e-03 > 1e-04",
        "check_error": 1.69e-3,
    }
    note = report._retolerated(row, quick=False)
    assert "within the case's tolerance of today, 1e-02" in note
    assert report._retolerated({**row, "check_error": 0.2}, quick=False) == ""
    assert report._retolerated({**row, "status": "error: boom"}, quick=False) == ""
    assert report._retolerated({**row, "shape": "no-such-shape"}, quick=False) == ""
