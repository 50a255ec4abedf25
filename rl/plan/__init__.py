"""`branchrl plan`: cluster sizing from a run's measured workload (hardware table, model shapes, the step model).

Reads run directories and config files; imports neither torch nor Ray, so a plan is instant on any laptop.
"""
