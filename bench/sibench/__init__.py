"""The si-xen benchmark (bench/run): timings of xen-create-image, a bare copy and si_mkxenvm."""
