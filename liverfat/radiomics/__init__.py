"""liverfat.radiomics"""
