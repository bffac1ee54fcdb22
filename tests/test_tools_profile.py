"""tools.profile_graph: the per-node profile of any graph (baby-llama's training graphs by default)."""
import json

from graphcore_tools import profile_graph


def test_profile_graph_cli(capsys):
    assert profile_graph.main(["--copies", "2", "--repeat", "1", "--top", "5", "--by-op", "--stat", "min"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("146 nodes, 1 thread(s)")
    table = out.split(" name\n", 1)[1].split("\n\n")[0].splitlines()
    assert len(table) == 5
    assert "MUL_MAT" in out and "SOFT_MAX" in out


def test_profile_graph_forward_two_threads_json(capsys):
    assert profile_graph.main(["--model", "baby-llama", "--graph", "forward", "--threads", "2", "--copies", "1",
                               "--repeat", "1", "--format", "json"]) == 0
    prof = json.loads(capsys.readouterr().out)
    assert prof["n_threads"] == 2 and prof["n_nodes"] == 62 and prof["ops"]
    assert all(n["us"] >= 0 and n["gbytes_per_s"] is None or n["gbytes_per_s"] > 0 for n in prof["nodes"])


def test_profile_graph_bad_options(capsys):
    assert profile_graph.main(["--copies", "0"]) == 1
    assert "--copies" in capsys.readouterr().err
