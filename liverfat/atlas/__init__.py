"""liverfat.atlas"""
