"""The first module the fork server imports (jobs.PRELOAD): it turns the garbage collector off for the imports
that follow. Collections during those imports walk ever more of torch's and MLflow's objects: about 2 s of the
fork server's start (6.3–6.9 s with it on, 4.3–4.9 s off), which the first task waits for. Each worker freezes
what it inherits from the server and turns the collector back on (jobs._start_worker)."""
import gc

gc.disable()
