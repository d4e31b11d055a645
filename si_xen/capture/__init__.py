"""si_getxenimage: a VM (or another hypervisor's disk) captured back into a SystemImager image,
the deploy's pipeline in reverse:

    the VM's record (or a foreign disk, fromdisk.py) -> its filesystems read-only in a private mount
    namespace and copied into a staging image (copy.py, getimage.exclude) -> the Xen-isms reversed (reverse.py)
    and the identity removed (identity.py) -> SystemImager's metadata, published by a rename (image.py)

service.py runs it for the command (cli/getxenimage.py).
"""
