#!/usr/bin/perl
# bench/scale/count.pl - counts the real processes of the children, from
# /proc: those whose program is CHILD (a copy of sleep only this bench runs),
# each named by the POGO_CHILD_ID in its environment.
#
#   count.pl CHILD [AGENT_PID...]   "procs ids dups": processes (under one of
#                                   the agents, if given), distinct ids, ids
#                                   with more than one process
#   count.pl -p CHILD               "ppid count" for every parent
#   count.pl -i CHILD PPID          the ids of PPID's children, one a line
use strict;
use warnings;

my $mode = ($ARGV[0] // '') =~ /^-[pi]$/ ? shift : '';
my $child = shift or die "usage: count.pl [-p|-i] CHILD [PID...]\n";
my %agent = map { $_ => 1 } @ARGV;

my (%ids, %per_parent, @of_parent);
my $procs = 0;
opendir(my $dh, '/proc') or die "/proc: $!\n";
for my $pid (grep { /^\d+$/ } readdir $dh) {
  my $exe = readlink "/proc/$pid/exe";
  next unless defined $exe && $exe eq $child;
  open(my $st, '<', "/proc/$pid/stat") or next;
  my $stat = <$st>;
  close $st;
  # the command name (field 2) may hold spaces: the parent follows its ')'
  my ($ppid) = $stat =~ /\)\s+\S+\s+(\d+)/ or next;
  next if %agent && !$agent{$ppid};
  open(my $en, '<', "/proc/$pid/environ") or next;
  local $/;
  my ($id) = (<$en> // '') =~ /(?:^|\0)POGO_CHILD_ID=([^\0]*)/;
  close $en;
  next unless defined $id;
  $procs++;
  $ids{$id}++;
  $per_parent{$ppid}++;
  push @of_parent, $id if $mode eq '-i' && $ppid == $ARGV[0];
}
closedir $dh;

if ($mode eq '-p') {
  print "$_ $per_parent{$_}\n" for sort { $a <=> $b } keys %per_parent;
} elsif ($mode eq '-i') {
  print "$_\n" for @of_parent;
} else {
  printf "%d %d %d\n", $procs, scalar(keys %ids), scalar(grep { $_ > 1 } values %ids);
}
