"""mdkstep.pipeline"""
