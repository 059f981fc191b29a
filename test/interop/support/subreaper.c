// Runs a command as this process's child with this process as the "child subreaper" (prctl(2)
// PR_SET_CHILD_SUBREAPER), so that processes the command forks are reaped here when their parent is gone,
// and reports how each ended. libvfio-user's sample client forks and execs the destination server in its
// *parent*, continuing as the child: the client's exit status reaches only a subreaper.
// Output (stdout): "start PID" for the command, then "exit PID CODE" or "signal PID SIG" per process reaped.
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char *argv[]) {
  if (argc < 2) {
    fprintf(stderr, "usage: subreaper CMD [ARGS...]\n");
    return 2;
  }
  if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) {
    perror("prctl");
    return 1;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  pid_t pid = fork();
  if (pid < 0) {
    perror("fork");
    return 1;
  }
  if (pid == 0) {
    execvp(argv[1], argv + 1);
    perror("execvp");
    _exit(127);
  }
  printf("start %d\n", (int)pid);
  for (;;) {
    int status;
    pid_t p = waitpid(-1, &status, 0);
    if (p < 0) {
      if (errno == EINTR) continue;
      break; /* ECHILD: everyone reaped */
    }
    if (WIFEXITED(status)) printf("exit %d %d\n", (int)p, WEXITSTATUS(status));
    else if (WIFSIGNALED(status)) printf("signal %d %d\n", (int)p, WTERMSIG(status));
  }
  return 0;
}
