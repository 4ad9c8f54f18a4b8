"""Server-keyed generation-time watermarking and its calibrated detector.

``keyed``: the one keyed function shared by embedding and detection. ``schemes``: the
schemes behind one interface and the ``SCHEMES`` registry. ``keys``: master secrets, key
ids, rotation, cohorts. ``detector``: exact p-values with named statistics.
``service.WatermarkService``: what the gateway, backends and forensics call.

Nothing is imported here, so that ``watermark.base`` stays cheap to import.
"""
