"""mdkstep.molecule"""
