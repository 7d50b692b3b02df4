/* Entry of every tiny guest: a private stack, then main(); if main returns, halt forever. */
    .section .text.start, "ax"
    .globl _start
    .code64
_start:
    lea stack_top(%rip), %rsp
    call main
1:  cli
    hlt
    jmp 1b

    .bss
    .balign 16
    .space 16384
stack_top:
