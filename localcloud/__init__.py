"""The embedded AWS for local runs: moto's backends on 127.0.0.1, functions run from their zips in sandboxes,
SQS event source mappings, a legacy-API simulator. Not used on AWS: `pulumi up` deploys the same program."""
