/* Entry of every tiny guest: a private stack, then main(boot_params) (ember passes the zero
 * page in RSI, per the Linux boot protocol); if main returns, halt forever. */
    .section .text.start, "ax"
    .globl _start
    .code64
_start:
    lea stack_top(%rip), %rsp
    mov %rsi, %rdi
    call main
1:  cli
    hlt
    jmp 1b

    .bss
    .balign 16
    .space 16384
stack_top:

    .section .note.GNU-stack, "", @progbits
