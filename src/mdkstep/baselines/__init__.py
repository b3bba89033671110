"""mdkstep.baselines"""
