"""Ganeti OS provider ``systemimager`` (OS API 20): Ganeti's instance environment mapped onto
si-xen's pipeline, on the disks Ganeti made.

    env (OSP_*, DISK_*, NIC_*, INSTANCE_HV_*) → plan → given disks → populate → fixups → boot

``params`` is the OS parameters (parameters.list, ``verify``, the man page), ``env`` reads
what Ganeti passes, ``install`` does create/import/export/rename, ``scripts`` is the entry
point of the OS definition's scripts (hooks/ganeti/systemimager/).
"""
