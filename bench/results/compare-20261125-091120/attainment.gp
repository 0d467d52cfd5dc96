set terminal png size 900,600 noenhanced
set output 'bench/results/compare-20261125-091120/attainment.png'
set title 'SLO attainment vs request rate'
set xlabel 'request rate (req/s)'
set ylabel 'attainment (TTFT and TPOT)'
set yrange [0:1.05]
set grid
set key bottom left
plot 'bench/results/compare-20261125-091120/llama-server.dat' using 1:2 with linespoints lw 2 title 'llama-server', 'bench/results/compare-20261125-091120/tandemd.dat' using 1:2 with linespoints lw 2 title 'tandemd', 0.9 with lines dt 2 lc rgb 'gray' title 'target'
