"""vitopt's device agent: measures ONNX models on the device it runs on and answers over HTTP.

Standard library only (plus the chosen backend's runtime) and valid on Python 3.6, so it
installs alone on JetPack 4.6. It imports nothing from the rest of vitopt.
"""

__version__ = "0.1.0"
API_VERSION = "v1"
