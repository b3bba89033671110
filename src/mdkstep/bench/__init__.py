"""`make bench`: the hybrid integrator beside every plain-MD alternative, at equal simulated
time, in one run (issue 6). See :mod:`mdkstep.bench.run`."""
