"""Everything that writes results: tables, NIfTI masks, overlays, reports, DICOM SEG/SR.

Every file is written atomically (temp file in the same folder, then ``os.replace``), so a
crash mid-run leaves the previous results intact (SPEC section 7).
"""
