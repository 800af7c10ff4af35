# bench/chart.gp: the bar chart of bench/results/latest.png, drawn by
# bench/run.sh from the data bench/report.lua writes:
#
#   gnuplot -e "data='chart.dat'; idle='chart-idle.dat'; out='latest.png'; subtitle='...'" bench/chart.gp
#
# Left: one bar per ratio of an ioq contender to a baseline of the same
# run, for rates and ("CPU/req") for the servers' CPU time per request
# (baseline / ioq, so higher is better there too): green where it meets
# its target, red where it misses it, grey where it has none. A black
# dash across a bar is its target; the dotted line is parity (1.0).
# Right (when idle is not ''): each echo server's resident memory per
# idle connection, in KiB, lower is better, with the target as a dash.

if (!exists("idle")) idle = ''
if (!exists("data")) data = ''

set terminal pngcairo size 2100,820 font "DejaVu Sans,11" noenhanced
set output out
set datafile separator "\t"  # labels have spaces; n/a ratios and absent targets are NaN

color(s) = s == 1 ? 0x2e9e44 : s == 2 ? 0xd64541 : 0x9aa3ad

set multiplot title "ioq against each baseline (medians of the same run)\n".subtitle

if (data ne '') {
  if (idle ne '') { set size 0.80, 1; set origin 0, 0 }
  set ylabel "ioq / baseline (CPU/req: baseline / ioq); higher is better"
  set yrange [0:*]
  set ytics 0.25 nomirror
  set grid ytics lc rgb "#dddddd"
  set xtics rotate by -40 nomirror
  stats data using 4 nooutput  # counts the bars
  set xrange [-0.7:STATS_records - 0.3]
  set border 3
  set boxwidth 0.7
  set style fill solid 0.85 border lc rgb "#444444"
  set key top left opaque box
  set bmargin 12
  set tmargin 6
  set arrow 1 from graph 0, first 1 to graph 1, first 1 nohead dt 3 lw 1.5 lc rgb "#555555"
  plot data using 0:2:(color($4)):xtic(1) with boxes lc rgb variable notitle, \
       "" using ($0 - 0.4):3:(0.8):(0) with vectors nohead lw 3 lc rgb "#000000" title "target", \
       "" using 0:6:5 with labels offset 0,0.8 notitle, \
       NaN with boxes lc rgb "#2e9e44" title "target met", \
       NaN with boxes lc rgb "#d64541" title "target missed", \
       NaN with boxes lc rgb "#9aa3ad" title "no target"
  unset arrow 1
}

if (idle ne '') {
  if (data ne '') { set size 0.20, 1; set origin 0.80, 0 }
  set title "memory per idle connection"
  unset key
  set ylabel "KiB per connection (lower is better)"
  set yrange [0:*]
  set ytics autofreq nomirror
  set grid ytics lc rgb "#dddddd"
  set xtics rotate by -40 nomirror
  set border 3
  set boxwidth 0.7
  set style fill solid 0.85 border lc rgb "#444444"
  set bmargin 12
  set tmargin 6
  stats idle using 4 nooutput  # counts the bars (column 4 is never NaN)
  set xrange [-0.7:STATS_records - 0.3]
  plot idle using 0:2:(color($4)):xtic(1) with boxes lc rgb variable notitle, \
       "" using ($0 - 0.4):3:(0.8):(0) with vectors nohead lw 3 lc rgb "#000000" notitle, \
       "" using 0:6:5 with labels offset 0,0.8 notitle
}
unset multiplot
