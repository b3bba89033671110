"""mdkstep.data"""
