"""imitalign: aligning language models as imitation learning."""

__version__ = "0.1.0"
