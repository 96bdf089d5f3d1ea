"""vfs: vnodes and their operations over the UBC engine (~ vfs_vnode.c, genfs_vnops.c,
ffs_vnops.c/ufs_readwrite.c)."""
