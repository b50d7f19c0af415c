#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
static _Alignas(64) _Atomic long ping; static _Alignas(64) _Atomic long pong; static _Atomic int stop;
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
static void pin(int c){cpu_set_t s;CPU_ZERO(&s);CPU_SET(c,&s);pthread_setaffinity_np(pthread_self(),sizeof s,&s);}
static void*partner(void*a){pin(1);long v=0;while(!atomic_load(&stop)){long p=atomic_load_explicit(&ping,memory_order_acquire);if(p!=v){v=p;atomic_store_explicit(&pong,p,memory_order_release);}}return 0;}
int main(){pin(0);
 /* compute: dependent integer chain */
 double t0=now(); unsigned long x=1; for(long i=0;i<200000000;i++){x=x*6364136223846793005UL+1442695040888963407UL;} double tc=now()-t0;
 /* memory: random pointer chase over 64 MiB, 4K-page stride randomised */
 size_t n=(64<<20)/64; long*buf=aligned_alloc(64,n*64); long*idx=malloc(n*sizeof(long)); for(size_t i=0;i<n;i++)idx[i]=i; srand(1); for(size_t i=n-1;i>0;i--){size_t j=rand()%(i+1);long t=idx[i];idx[i]=idx[j];idx[j]=t;} for(size_t i=0;i<n;i++)buf[idx[i]*8]=idx[(i+1)%n]*8; free(idx);
 long p=0; t0=now(); for(long i=0;i<4000000;i++)p=buf[p]; double tm=(now()-t0)/4e6;
 /* ping-pong */
 pthread_t th; pthread_create(&th,0,partner,0); for(long i=1;i<1000;i++){atomic_store(&ping,i);while(atomic_load(&pong)!=i);} t0=now(); long N=200000; for(long i=1000;i<1000+N;i++){atomic_store_explicit(&ping,i,memory_order_release);while(atomic_load_explicit(&pong,memory_order_acquire)!=i);} double tp=(now()-t0)/N; atomic_store(&stop,1); pthread_join(th,0);
 printf("compute %.2f ns/iter  chase %.1f ns  pingpong %.1f ns rtt %s\n", tc/2e8*1e9, tm*1e9, tp*1e9, x==3&&p==-1?"!":""); return 0;}
