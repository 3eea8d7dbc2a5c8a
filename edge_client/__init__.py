"""The AMS edge client: segment frames with a student the AMS trainer keeps adapting.

    from edge_client import EdgeClient, CertFiles
    with EdgeClient("trainer:50052", tls=CertFiles(ca, cert, key)) as client:
        mask = client.segment(rgb)

`ams-edge` (edge_client.cli) is built on the same client.
"""
from ams.pki import CertFiles
from edge_client.client import DEFAULT_STUDENT, EdgeClient, EdgeError, EdgeOptions, Result
from edge_client.sources import open_source
from edge_client.video_source import Frame

__all__ = ["CertFiles", "DEFAULT_STUDENT", "EdgeClient", "EdgeError", "EdgeOptions", "Frame", "Result", "open_source"]
