"""Request parameters shared by ``/v1/segment`` and ``/v1/jobs``, and the upload's OpenAPI body."""

from __future__ import annotations

from typing import Annotated

from fastapi import Header, Query

from service.api.uploads import FILE_FIELD, RAW_MEDIA_TYPES

OverlapQuery = Annotated[
    float | None,
    Query(ge=0.0, lt=1.0, description="sliding-window overlap in [0, 1); default from the settings"),
]
FilenameQuery = Annotated[
    str | None,
    Query(
        max_length=255,
        description="the CT's file name for a raw-body upload (e.g. case.nrrd): names the mask and "
        "is a format hint when the bytes carry no signature",
    ),
]
FilenameHeader = Annotated[str | None, Header(alias="X-Filename", max_length=255, description="same as ?filename=")]

_BINARY = {"schema": {"type": "string", "format": "binary"}}
# The endpoints read the body themselves (streamed, size-capped), so FastAPI cannot infer it.
UPLOAD_BODY: dict = {
    "requestBody": {
        "required": True,
        "description": "The CT: NIfTI (.nii/.nii.gz), NRRD, MHA, or a zip of one DICOM series; "
        f"as the raw body or as multipart/form-data field '{FILE_FIELD}'.",
        "content": {
            **{media_type: _BINARY for media_type in sorted(RAW_MEDIA_TYPES)},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FILE_FIELD],
                    "properties": {FILE_FIELD: {"type": "string", "format": "binary"}},
                }
            },
        },
    }
}
