"""tools.profile_graph: the per-node profile of baby-llama's training graphs runs and prints its table."""
from tools import profile_graph


def test_profile_graph_cli(capsys):
    assert profile_graph.main(["--copies", "2", "--repeat", "1", "--top", "5", "--by-op", "--stat", "min"]) == 0
    out = capsys.readouterr().out
    assert "backward 146 nodes" in out
    table = out.split("name\n", 1)[1].split("\n\n")[0].splitlines()
    assert len(table) == 5
    assert "MUL_MAT" in out and "SOFT_MAX" in out


def test_profile_graph_forward_two_threads(capsys):
    assert profile_graph.main(["--graph", "forward", "--threads", "2", "--copies", "1", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "2 thread(s)" in out and "forward graph: sum of the nodes" in out
