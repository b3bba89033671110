"""mdkstep.analysis"""
