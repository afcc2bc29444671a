/* An eBPF object with data and no program. */
int answer = 42;
