"""The portrait-engine command."""

from portrait_engine import cli


def test_info_lists_backends(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "backends per device" in out and "torch" in out and "cpu" in out


def test_bench_one_op_prints_table(capsys, tmp_path):
    code = cli.main(
        [
            "bench",
            "triplane_sample",
            "--quick",
            "--providers",
            "torch",
            "native",
            "--budget",
            "0.01",
            "--out",
            str(tmp_path),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "triplane_sample" in out and "quick-triplane" in out
    assert list(tmp_path.glob("*/quick.json"))
