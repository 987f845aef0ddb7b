"""PACS integration over DICOMweb: choose a study's CT series (QIDO-RS), fetch it (WADO-RS),
segment it and store the RTSTRUCT/SEG back (STOW-RS). docs/PACS.md describes the deployment."""
