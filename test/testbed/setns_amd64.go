package testbed

// sysSetns is setns(2)'s number; package syscall does not define it.
const sysSetns = 308
