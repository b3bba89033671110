"""md-kstep: learned k-step molecular dynamics (nm, ps, kJ/mol, amu, K)."""
__version__ = "0.1.0"
