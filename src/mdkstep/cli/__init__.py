"""mdkstep.cli"""
