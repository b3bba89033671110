"""mdkstep.exact.sampler"""
