"""A few hundred property-based fuzz cases against live teacher and trainer processes over mutual
TLS (the long run is `make fuzz`): no INTERNAL, no crash, bounded memory, everyone else served."""
from benchmarks.fuzz import METHODS, check, fuzz


def test_fuzzed_requests_never_answer_internal_nor_take_the_servers_down(tmp_path):
    summary = fuzz(cases=300, out=str(tmp_path / "fuzz"), seed=1)
    assert summary["cases"] >= 300
    assert sorted(summary["codes"]) == sorted(m.rsplit("/", 1)[1] for m in METHODS)   # every RPC of both services
    assert check(summary) == [], check(summary)
