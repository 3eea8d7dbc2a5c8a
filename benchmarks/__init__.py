"""Benchmarks, fuzzing and chaos runs (`make bench-*`, `make fuzz`, `make chaos`, `make soak`). Not installed:
they import the packages (ams, services, edge_client) and write JSON under out/ and tables into docs/."""
