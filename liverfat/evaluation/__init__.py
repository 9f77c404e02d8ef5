"""liverfat.evaluation"""
