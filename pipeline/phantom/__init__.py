"""Synthetic CRAV cohort with exact truth: anatomy in physical space, MR/CT rendering, DICOM export."""
