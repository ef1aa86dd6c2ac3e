"""The embedded AWS for local runs: moto in server mode on 127.0.0.1, deployed functions run from
their zips in sandbox processes, SQS event source mappings with AWS semantics, and a legacy-API
simulator. Nothing here is used on AWS; `pulumi up` deploys the same program for real.
"""
