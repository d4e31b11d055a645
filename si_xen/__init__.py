"""si-xen: turn a SystemImager image into a running Xen virtual machine."""

__version__ = "0.1.0"
PROJECT = "si-xen"
