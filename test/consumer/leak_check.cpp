// Built with -Werror: fails if weldr::weldr passed its own warning flags (-Wold-style-cast
// among them) to the programs that link it.
int weldr_consumer_leak_check(double x);
int weldr_consumer_leak_check(double x) {
  return (int)x;
}
