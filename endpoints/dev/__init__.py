"""Running the product on one machine, for development, tests and benchmarks (nothing of
the product imports it; management commands do):

- ``devstack``: starting Redis and the product's processes, free ports, waits;
- ``devdb``: a throwaway PostgreSQL server on loopback;
- ``demo``: the demo models ``make run`` registers.
"""
