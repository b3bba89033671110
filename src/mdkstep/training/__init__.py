"""mdkstep.training.trainer"""
