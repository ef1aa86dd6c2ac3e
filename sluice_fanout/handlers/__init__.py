"""Lambda runtime code for Sluice: pure decision modules, thin boto3 adapters, entry points.

Nothing here imports pulumi (a test enforces it): this package is zipped into the functions.
"""
