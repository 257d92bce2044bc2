"""The first module the fork server imports (jobs.PRELOAD): it turns the garbage collector off for the imports
that follow. Collections during those imports walk ever more of torch's and MLflow's objects: a second and a
half of the fork server's start, which the command's first task waits for. Each worker freezes
what it inherits from the server and turns the collector back on (jobs._start_worker)."""
import gc

gc.disable()
