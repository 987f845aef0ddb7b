"""What a segmentation is written as: NIfTI, RTSTRUCT, DICOM SEG, and organ statistics."""
