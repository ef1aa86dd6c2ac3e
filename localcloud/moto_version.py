"""The one moto the embedded AWS's patches are written against."""

from __future__ import annotations

import moto

MOTO_VERSION = "5.2.5"
"""Every module that patches moto (moto_sqs, moto_sfn, moto_dynamodb, moto_results) replaces or wraps
functions of this version; requirements-local.txt pins the same version."""


class UnsupportedMotoError(RuntimeError):
    """The installed moto is not the one the embedded AWS's patches were written against."""


def require_moto(patcher: str, check: str, version: str | None = None) -> None:
    """Refuse to patch any moto but MOTO_VERSION; `check` says what to compare in a new one.

    A new moto may have fixed, moved or changed what a patch assumes.
    """
    installed = moto.__version__ if version is None else version
    if installed != MOTO_VERSION:
        raise UnsupportedMotoError(
            f"localcloud.{patcher}: patches are written against moto {MOTO_VERSION}, got moto "
            f"{installed} (install moto=={MOTO_VERSION}: pip install -r requirements-local.txt; "
            f"or {check} and update localcloud/moto_version.py)"
        )
