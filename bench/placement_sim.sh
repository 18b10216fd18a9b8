#!/usr/bin/env bash
# Placement on a simulated fleet: kindling's scoring (cells, shuffle shards,
# L1 locality from the hosts' Bloom summaries, load, spread) against random
# and least-loaded placement, on the same synthetic trace
# (bench/placement_sim.c says what it models).  Prints the Markdown table
# and writes a PNG plot with gnuplot.
#
#   bench/placement_sim.sh [--quick] [--replot] [OUT_DIR] [-- extra placement_sim options]
#
# --quick: 1,000 hosts (under a minute); without it 10,000 hosts (a few minutes).
# OUT_DIR (default ./placement_sim.out) gets table.md, summary.dat,
# series.dat and placement_sim.png; --replot only redraws the plot from
# what an earlier run left there.  Deterministic: the seed is fixed (pass
# -- --seed N for another trace).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
build=${KINDLING_BUILD_DIR:-$top/build}
quick=()
replot=
out=
extra=()
while [ $# -gt 0 ]; do
	case "$1" in
	--quick) quick=(--quick) ;;
	--replot) replot=1 ;;
	--) shift; extra=("$@"); break ;;
	-*) echo "placement_sim.sh: unknown option $1" >&2; exit 2 ;;
	*) out=$1 ;;
	esac
	shift
done
out=${out:-$PWD/placement_sim.out}
command -v gnuplot >/dev/null || { echo "placement_sim.sh: gnuplot is missing (apt-get install gnuplot-nox)" >&2; exit 1; }
if [ -z "$replot" ]; then
	[ -x "$build/placement_sim" ] || cmake --build "$build" -j2 --target placement_sim >/dev/null
	mkdir -p "$out"
	"$build/placement_sim" "${quick[@]}" --data "$out" "${extra[@]}" | tee "$out/table.md"
elif [ ! -f "$out/summary.dat" ]; then
	echo "placement_sim.sh: --replot: no earlier run in $out" >&2
	exit 1
fi

gnuplot <<EOF
set terminal pngcairo size 1200,800 font ",10" noenhanced
set output "$out/placement_sim.png"
set multiplot layout 2,2 title "$(head -1 "$out/table.md")"
set key top left
set xlabel "simulated minute"
set grid
set title "cold-start fraction (per 5 minutes)"
plot "$out/series.dat" using 1:3 with lines lw 2 title "scored", \
     "" using 1:4 with lines lw 2 title "random", \
     "" using 1:5 with lines lw 2 title "least-loaded"
set title "L1 hit rate by bytes, at cold starts"
set yrange [0:1]
plot "$out/series.dat" using 1:6 with lines lw 2 title "scored", \
     "" using 1:7 with lines lw 2 title "random", \
     "" using 1:8 with lines lw 2 title "least-loaded"
set autoscale y
set title "offered load (invocations/s; one compressed day, cron bursts)"
plot "$out/series.dat" using 1:2 with lines lw 1 notitle
set title "totals"
set xlabel ""
set style data histogram
set style histogram clustered gap 1
set style fill solid 0.8
set yrange [0:*]
set xtics ("cold starts x10" 0, "L1 hits" 1, "imbalance-1" 2, "churn x10" 3)
set key top left
plot "< awk 'NR>1 {print \$2*10, \$3, \$4-1, \$5*10}' $out/summary.dat | awk '{for(i=1;i<=NF;i++)a[i,NR]=\$i} END{for(i=1;i<=4;i++)print a[i,1],a[i,2],a[i,3]}'" \
     using 1 title "scored", "" using 2 title "random", "" using 3 title "least-loaded"
unset multiplot
EOF
echo "placement_sim.sh: plot in $out/placement_sim.png" >&2
