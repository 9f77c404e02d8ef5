"""liverfat.deep"""
